//! Runs: the one pipeline entry shared by the CLI, the scheduler and the tests,
//! and the run record it leaves in the state location.
//!
//! ```text
//! ingest ─▶ identity ─▶ merge ─▶ segments ─▶ exports ─▶ run record
//! ```

pub mod interrupt;
pub mod ledger;
pub mod lock;
pub mod progress;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Class, Project};
use crate::engine;
use crate::error::{Error, Result};
use crate::export::{self, ExportManifest, ProfilesByPolicy};
use crate::identity::{self, Stitched};
use crate::ingest::{self, Ingested, InputFile};
use crate::merge;
use crate::segment::{self, Group};
use interrupt::Interrupt;
use progress::{Progress, thousands};

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `audience run`.
    Manual,
    /// `audience schedule`, at a destination's cron slot.
    Schedule,
    /// `audience run --due`.
    Due,
}

/// A run's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Written at the start; a run found `running` whose process is gone is marked failed.
    Running,
    Succeeded,
    Failed,
}

/// Timing and counts of one stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub seconds: f64,
    pub counts: BTreeMap<String, u64>,
}

/// Rejections of one dataset, column and reason.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RejectionCount {
    pub dataset: String,
    pub column: String,
    pub reason: String,
    pub count: u64,
}

/// Members of one segment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SegmentCount {
    pub segment: String,
    pub class: String,
    pub policy: String,
    pub members: u64,
    /// Members now and not in the baseline run.
    #[serde(default)]
    pub realized: u64,
    /// Members now and in the baseline run.
    #[serde(default)]
    pub existing: u64,
    /// Members of the baseline run that left.
    #[serde(default)]
    pub exited: u64,
}

/// The input files of one dataset.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DatasetInputs {
    pub dataset: String,
    pub files: Vec<InputFileRecord>,
}

/// One input file in the run record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InputFileRecord {
    pub path: String,
    pub size: u64,
    pub last_modified: String,
    pub etag: Option<String>,
}

impl From<&InputFile> for InputFileRecord {
    fn from(f: &InputFile) -> Self {
        InputFileRecord {
            path: f.path.clone(),
            size: f.size,
            last_modified: f.last_modified.clone(),
            etag: f.etag.clone(),
        }
    }
}

/// `runs/<run_id>/run.json` in the state location.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub project: String,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub as_of: String,
    pub started_at: String,
    pub finished_at: String,
    pub config_sha256: String,
    pub sql_sha256: String,
    pub engine_version: String,
    pub inputs: Vec<DatasetInputs>,
    pub stages: Vec<StageRecord>,
    pub rejections: Vec<RejectionCount>,
    pub segments: Vec<SegmentCount>,
    /// The run that segment statuses compare with: the previous successful run by as-of.
    #[serde(default)]
    pub membership_baseline: Option<String>,
    /// The segments a `--segment` run was limited to (empty: all). Such a run
    /// is never the membership baseline of another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_subset: Vec<String>,
    pub exports: Vec<ExportManifest>,
    pub error: Option<String>,
}

impl SegmentCount {
    /// The counts of every segment, from its members and its status counts.
    pub fn all(
        memberships: &[segment::Membership],
        statuses: &BTreeMap<String, segment::history::StatusCounts>,
    ) -> Vec<SegmentCount> {
        memberships
            .iter()
            .map(|m| {
                let s = statuses.get(&m.segment).copied().unwrap_or_default();
                SegmentCount {
                    segment: m.segment.clone(),
                    class: m.class.as_str().into(),
                    policy: m.policy.clone(),
                    members: m.members.len() as u64,
                    realized: s.realized,
                    existing: s.existing,
                    exited: s.exited,
                }
            })
            .collect()
    }
}

/// Crash testing: `AUDIENCE_CRASH_AT=<stage>` kills the process when the
/// stage starts (`ingest`, `identity`, `merge+segments`, `export`).
fn crash_point(stage: &str) {
    if std::env::var("AUDIENCE_CRASH_AT").is_ok_and(|s| s == stage) {
        kill_self();
    }
}

/// Interrupt testing: `AUDIENCE_PAUSE_AT=<stage>` stops at the stage's start
/// (as `AUDIENCE_CRASH_AT` names them; `export:<destination>` before that
/// destination is written), says so on stderr, and waits for the interrupt.
pub(crate) async fn pause_point(stage: &str, interrupt: &Interrupt) -> Result<()> {
    if std::env::var("AUDIENCE_PAUSE_AT").is_ok_and(|s| s == stage) {
        eprintln!("paused at {stage}");
        return Err(Error::Interrupted(interrupt.raised_signal().await));
    }
    Ok(())
}

/// What the stages before the export hand it.
struct Prepared {
    ctx: datafusion::prelude::SessionContext,
    memberships: Vec<segment::Membership>,
    profiles: ProfilesByPolicy,
    baseline: Option<segment::history::Members>,
}

/// Crash testing: die by SIGKILL, as an operator's `kill -9` or the OOM killer
/// would (no unwinding, no cleanup); abort if that is not possible.
pub fn kill_self() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    std::thread::sleep(std::time::Duration::from_secs(5));
    std::process::abort()
}

/// A new run id: the UTC start time and 6 hex characters.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    h.update(now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &hex::encode(h.finalize())[..6]
    )
}

fn is_valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The whole batch pipeline over one project.
pub struct Pipeline {
    project: Project,
    trigger: Trigger,
    segment_subset: Vec<String>,
    as_of: DateTime<Utc>,
    run_id: String,
    progress: Progress,
    interrupt: Interrupt,
}

#[derive(Default)]
struct Collected {
    datasets: Vec<Ingested>,
    stitched: Option<Stitched>,
    stages: Vec<StageRecord>,
    segments: Vec<SegmentCount>,
    baseline: Option<String>,
    exports: Vec<ExportManifest>,
}

impl Collected {
    /// Record a finished stage's seconds and counts.
    fn stage(&mut self, stage: &str, seconds: f64, counts: &[(&str, u64)]) {
        let counts = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.stages.push(StageRecord {
            stage: stage.into(),
            seconds,
            counts,
        });
    }
}

impl Pipeline {
    /// A pipeline at as-of now (to the second) with a fresh run id.
    pub fn new(project: Project) -> Self {
        let now = Utc::now();
        let as_of = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        Pipeline {
            project,
            trigger: Trigger::Manual,
            segment_subset: Vec::new(),
            as_of,
            run_id: new_run_id(now),
            progress: Progress::hidden(),
            interrupt: Interrupt::default(),
        }
    }

    pub fn with_as_of(mut self, as_of: DateTime<Utc>) -> Self {
        self.as_of = as_of;
        self
    }

    /// Re-use a run id (re-running it rewrites the same files).
    ///
    /// # Errors
    /// [`Error::Config`] when the id is not 1–64 letters, digits, `-` or `_`.
    pub fn with_run_id(mut self, run_id: &str) -> Result<Self> {
        if !is_valid_run_id(run_id) {
            let mut p = crate::error::Problems::default();
            p.push(
                "--run-id",
                "",
                format!("`{run_id}` is not a run id: use 1-64 letters, digits, `-` or `_`"),
            );
            return Err(Error::Config(p));
        }
        self.run_id = run_id.to_string();
        Ok(self)
    }

    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Export only these destinations (all segments are still evaluated).
    ///
    /// # Errors
    /// [`Error::Config`] naming a destination that is not configured.
    pub fn with_destinations(mut self, names: &[String]) -> Result<Self> {
        let known: Vec<String> = self
            .project
            .destinations
            .iter()
            .map(|d| d.name.clone())
            .collect();
        let mut p = crate::error::Problems::default();
        for n in names {
            if !known.contains(n) {
                p.push(
                    "--destination",
                    n.as_str(),
                    format!(
                        "unknown destination `{n}`: {}",
                        crate::error::one_of(n, known.iter().map(String::as_str))
                    ),
                );
            }
        }
        p.into_result()?;
        self.project
            .destinations
            .retain(|d| names.contains(&d.name));
        Ok(self)
    }

    /// Evaluate only these segments (and the features and segments they read)
    /// and export only their files; destinations without any of them, and
    /// profile snapshots, are skipped.
    ///
    /// # Errors
    /// [`Error::Config`] naming a segment that does not exist.
    pub fn with_segments(mut self, names: &[String]) -> Result<Self> {
        let known: Vec<String> = self.project.segments().map(|m| m.id.clone()).collect();
        let mut p = crate::error::Problems::default();
        for n in names {
            if !known.contains(n) {
                p.push(
                    "--segment",
                    n.as_str(),
                    format!(
                        "unknown segment `{n}`: {}",
                        crate::error::one_of(n, known.iter().map(String::as_str))
                    ),
                );
            }
        }
        p.into_result()?;
        // What the chosen segments read, transitively.
        let mut keep: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        loop {
            let more: Vec<String> = self
                .project
                .models
                .iter()
                .filter(|m| keep.contains(&m.id))
                .flat_map(|m| m.depends_on.iter().cloned())
                .filter(|d| !keep.contains(d))
                .collect();
            if more.is_empty() {
                break;
            }
            keep.extend(more);
        }
        self.project.models.retain(|m| keep.contains(&m.id));
        for d in &mut self.project.destinations {
            d.segments.retain(|s| names.contains(s));
        }
        self.project.destinations.retain(|d| {
            d.kind != crate::config::DestinationKind::ProfileSnapshot && !d.segments.is_empty()
        });
        self.segment_subset = names.to_vec();
        Ok(self)
    }

    /// Stop the run when `interrupt` is raised (see [`interrupt`]).
    pub fn with_interrupt(mut self, interrupt: Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Plan this run without writing anything; see [`dry_run`].
    ///
    /// # Errors
    /// As [`dry_run`].
    pub async fn dry_run(&self, compare: bool) -> Result<DryRun> {
        dry_run(&self.project, self.as_of, &self.run_id, compare).await
    }

    /// Run every stage, then write the run record (also when a stage failed).
    ///
    /// # Errors
    /// The first stage error; the run record then has status `failed` and the error.
    pub async fn run(self) -> Result<RunRecord> {
        let destinations: Vec<String> = self
            .project
            .destinations
            .iter()
            .map(|d| d.name.clone())
            .collect();
        let mut locks = lock::acquire(&self.project, &self.run_id, &destinations).await?;
        let result = self.run_locked().await;
        locks.release().await;
        result
    }

    async fn run_locked(&self) -> Result<RunRecord> {
        ledger::mark_dead_runs(&self.project, &self.run_id).await?;
        let started = Utc::now();
        self.write_record(&self.record(
            RunStatus::Running,
            started,
            Collected::default(),
            Vec::new(),
            None,
        ))
        .await?;
        let mut c = Collected::default();
        let result = self.stages(&mut c).await;
        let status = if result.is_ok() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let rejections = c
            .stitched
            .as_ref()
            .map(|s| {
                s.rejections
                    .counts
                    .iter()
                    .map(|((dataset, column, reason), count)| RejectionCount {
                        dataset: dataset.clone(),
                        column: column.clone(),
                        reason: reason.clone(),
                        count: *count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let error = result.as_ref().err().map(|e| e.to_string());
        let record = self.record(status, started, c, rejections, error);
        let written = self.write_record(&record).await;
        result?;
        written?;
        Ok(record)
    }

    /// The run record from what the stages collected.
    fn record(
        &self,
        status: RunStatus,
        started: DateTime<Utc>,
        c: Collected,
        rejections: Vec<RejectionCount>,
        error: Option<String>,
    ) -> RunRecord {
        RunRecord {
            run_id: self.run_id.clone(),
            project: self.project.name.clone(),
            trigger: self.trigger,
            status,
            as_of: self.as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
            started_at: started.to_rfc3339_opts(SecondsFormat::Millis, true),
            finished_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            config_sha256: self.project.config_hash.clone(),
            sql_sha256: self.project.sql_hash.clone(),
            engine_version: crate::VERSION.to_string(),
            inputs: c
                .datasets
                .iter()
                .map(|d| DatasetInputs {
                    dataset: d.dataset.name.clone(),
                    files: d.files.iter().map(InputFileRecord::from).collect(),
                })
                .collect(),
            stages: c.stages,
            rejections,
            segments: c.segments,
            membership_baseline: c.baseline,
            segment_subset: self.segment_subset.clone(),
            exports: c.exports,
            error,
        }
    }

    async fn write_record(&self, record: &RunRecord) -> Result<()> {
        let dir = identity::store::run_dir(&self.project, &self.run_id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
        identity::store::put(&dir.join("run.json"), json).await?;
        if record.status == RunStatus::Succeeded {
            identity::store::mark_latest(&self.project, &self.run_id).await?;
        }
        Ok(())
    }

    /// Every stage. An interrupt drops the stages before the export where
    /// they stand (like a crash, but the record is written and the locks
    /// released); the export stops at its next file or part.
    async fn stages(&self, c: &mut Collected) -> Result<()> {
        let prepared = self.interrupt.race(self.prepare(c)).await?;
        self.interrupt.check()?;
        self.export(c, prepared).await
    }

    /// Ingest, identity, merge and segments: what the export needs.
    async fn prepare(&self, c: &mut Collected) -> Result<Prepared> {
        let project = &self.project;
        let ctx = engine::session(project, self.as_of).await?;

        crash_point("ingest");
        pause_point("ingest", &self.interrupt).await?;
        let st = self.progress.stage("ingest");
        c.datasets = ingest::ingest(&ctx, project).await?;
        let files: usize = c.datasets.iter().map(|d| d.files.len()).sum();
        let secs = st.finish(&format!("{} datasets, {} files", c.datasets.len(), files));
        let n = c.datasets.len() as u64;
        c.stage("ingest", secs, &[("datasets", n), ("files", files as u64)]);

        // Fields of every destination are checked against the profile columns before anything is read.
        self.check_destination_fields(&c.datasets)?;

        crash_point("identity");
        pause_point("identity", &self.interrupt).await?;
        let st = self.progress.stage("identity");
        let previous = identity::store::previous_map(project).await?;
        let out = identity::store::run_dir(project, &self.run_id);
        let stitched = identity::stitch(
            &ctx,
            project,
            &c.datasets,
            previous.as_ref(),
            &out,
            |rows| st.update(format!("{} rows", thousands(rows))),
        )
        .await?;
        let rows: u64 = stitched.rows_read.values().sum();
        let profiles_by_class: BTreeMap<Class, usize> = stitched
            .profiles
            .iter()
            .map(|(k, b)| (*k, b.iter().map(|b| b.num_rows()).sum::<usize>()))
            .collect();
        let n_profiles: usize = profiles_by_class.values().sum();
        let secs = st.finish(&format!(
            "{} rows, {} identities, {} profiles, {} rejected",
            thousands(rows),
            thousands(stitched.health.identities),
            thousands(n_profiles as u64),
            thousands(stitched.rejections.total())
        ));
        let mut counts = BTreeMap::from([
            ("rows".to_string(), rows),
            ("identities".to_string(), stitched.health.identities),
            ("links".to_string(), stitched.health.links),
            ("links_cut".to_string(), stitched.health.links_cut),
            ("quarantined".to_string(), stitched.health.quarantined),
            ("oversized".to_string(), stitched.health.oversized),
            ("rejected".to_string(), stitched.rejections.total()),
        ]);
        for (class, n) in &profiles_by_class {
            counts.insert(format!("profiles_{}", class.as_str()), *n as u64);
        }
        c.stages.push(StageRecord {
            stage: "identity".into(),
            seconds: secs,
            counts,
        });
        merge::register_identity_tables(&ctx, project, &stitched)?;
        let identity_map = stitched.outputs.join("identity_map.parquet");
        ctx.register_parquet(
            "__identity_map",
            identity_map.url().as_str(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .map_err(Error::engine("identity"))?;
        c.stitched = Some(stitched);

        crash_point("merge+segments");
        pause_point("merge+segments", &self.interrupt).await?;
        let st = self.progress.stage("merge+segments");
        let (memberships, groups) = evaluate_segments(&ctx, project, &c.datasets).await?;
        let feature_runs: usize = groups.values().map(|g| g.feature_runs).sum();
        let profiles: ProfilesByPolicy = groups.into_iter().map(|(k, g)| (k, g.profiles)).collect();
        let total: usize = memberships.iter().map(|m| m.members.len()).sum();
        let secs = st.finish(&format!(
            "{} segments, {} memberships",
            memberships.len(),
            thousands(total as u64)
        ));
        let baseline = segment::history::baseline(project, self.as_of, &self.run_id).await?;
        let statuses = segment::history::write(
            project,
            &self.run_id,
            &memberships,
            baseline.as_ref().map(|(_, m)| m),
        )
        .await?;
        let baseline_members = baseline.as_ref().map(|(_, m)| m.clone());
        c.baseline = baseline.map(|(id, _)| id);
        c.segments = SegmentCount::all(&memberships, &statuses);
        c.stage(
            "segments",
            secs,
            &[
                ("segments", memberships.len() as u64),
                ("memberships", total as u64),
                ("feature_queries", feature_runs as u64),
            ],
        );

        Ok(Prepared {
            ctx,
            memberships,
            profiles,
            baseline: baseline_members,
        })
    }

    async fn export(&self, c: &mut Collected, e: Prepared) -> Result<()> {
        let project = &self.project;
        crash_point("export");
        pause_point("export", &self.interrupt).await?;
        let st = self.progress.stage("export");
        let oversized = c
            .stitched
            .as_ref()
            .map(|s| s.oversized.clone())
            .unwrap_or_default();
        let audiences = export::Audiences {
            memberships: &e.memberships,
            profiles: &e.profiles,
            oversized: &oversized,
            baseline: e.baseline.as_ref(),
        };
        let run = export::RunInfo {
            run_id: &self.run_id,
            as_of: self.as_of,
            interrupt: &self.interrupt,
        };
        // Each destination's manifest joins the record once it is published,
        // so a run that fails later still lists what it published.
        export::export(&e.ctx, project, &run, &audiences, &mut c.exports, |d| {
            st.update(d.to_string())
        })
        .await?;
        let nfiles: usize = c.exports.iter().map(|m| m.files.len()).sum();
        let rows: u64 = c.exports.iter().map(ExportManifest::rows).sum();
        let secs = st.finish(&format!(
            "{} destinations, {} files, {} rows",
            c.exports.len(),
            nfiles,
            thousands(rows)
        ));
        let n = c.exports.len() as u64;
        c.stage(
            "export",
            secs,
            &[
                ("destinations", n),
                ("files", nfiles as u64),
                ("rows", rows),
            ],
        );
        Ok(())
    }

    fn check_destination_fields(&self, datasets: &[Ingested]) -> Result<()> {
        export::check_fields(&self.project, datasets)
    }
}

/// The `identities` relation of a class: the run's identity map without its class column.
/// The relations of one (class, merge policy) group: profiles, events, identities.
///
/// # Errors
/// What merging the profiles or planning the relations reports.
pub async fn build_group(
    ctx: &datafusion::prelude::SessionContext,
    project: &Project,
    datasets: &[Ingested],
    class: Class,
    policy_name: &str,
) -> Result<Group> {
    let policy = project
        .policy(policy_name)
        .ok_or_else(|| Error::Internal(format!("policy {policy_name} vanished")))?;
    let profiles = merge::profiles(ctx, project, datasets, policy).await?;
    let events = merge::events(ctx, project, datasets, class, policy.stitching)
        .await?
        .into_view();
    let identities = class_identities(ctx, class, policy.stitching).await?;
    Ok(Group {
        class,
        policy: policy.name.clone(),
        profiles,
        events,
        identities,
        features: BTreeMap::new(),
        feature_runs: 0,
    })
}

/// Every segment, with the groups (policies) they used.
async fn evaluate_segments(
    ctx: &datafusion::prelude::SessionContext,
    project: &Project,
    datasets: &[Ingested],
) -> Result<(Vec<segment::Membership>, BTreeMap<String, Group>)> {
    segment::evaluate(ctx, project, |class, policy| async move {
        build_group(ctx, project, datasets, class, &policy).await
    })
    .await
}

/// Everything a run computes before exporting, with nothing written: the
/// session (relations registered), the datasets, the memberships and groups.
/// For `audience query` and `audience segments --as-of`.
pub struct Evaluated {
    pub ctx: datafusion::prelude::SessionContext,
    pub datasets: Vec<Ingested>,
    pub memberships: Vec<segment::Membership>,
    pub groups: BTreeMap<String, Group>,
    /// Profiles kept out of exports (`identity.max_identities`).
    pub oversized: std::collections::BTreeSet<String>,
}

/// Ingest and stitch at `as_of` with the identity outputs in memory (ids carry
/// over from the latest run), and register what merge needs on the session.
///
/// # Errors
/// What a run would report for these stages.
pub async fn stitch_in_memory(
    project: &Project,
    as_of: DateTime<Utc>,
) -> Result<(datafusion::prelude::SessionContext, Vec<Ingested>, Stitched)> {
    let ctx = engine::session(project, as_of).await?;
    let datasets = ingest::ingest(&ctx, project).await?;
    let previous = identity::store::previous_map(project).await?;
    // On a cluster the outputs must be where executors read them.
    let scratch = match engine::cluster(&ctx) {
        Some(c) => c.scratch.join("identity"),
        None => engine::storage::Location::parse(
            &format!(
                "memory://audience-scratch/{}",
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ),
            &project.root,
        )
        .map_err(Error::Internal)?,
    };
    engine::register_store(&ctx, &scratch)?;
    let stitched = identity::stitch(
        &ctx,
        project,
        &datasets,
        previous.as_ref(),
        &scratch,
        |_| {},
    )
    .await?;
    merge::register_identity_tables(&ctx, project, &stitched)?;
    Ok((ctx, datasets, stitched))
}

/// Run ingest, identity, merge and segments at `as_of` without writing
/// anything (identity outputs stay in memory; ids carry over from the latest run).
///
/// # Errors
/// What a run would report.
pub async fn evaluate(project: &Project, as_of: DateTime<Utc>) -> Result<Evaluated> {
    let (ctx, datasets, stitched) = stitch_in_memory(project, as_of).await?;
    ctx.register_parquet(
        "__identity_map",
        stitched.outputs.join("identity_map.parquet").url().as_str(),
        datafusion::prelude::ParquetReadOptions::default(),
    )
    .await
    .map_err(Error::engine("identity"))?;
    let (memberships, groups) = evaluate_segments(&ctx, project, &datasets).await?;
    Ok(Evaluated {
        ctx,
        datasets,
        memberships,
        groups,
        oversized: stitched.oversized,
    })
}

async fn class_identities(
    ctx: &datafusion::prelude::SessionContext,
    class: Class,
    stitching: crate::config::Stitching,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    // Stitching off: each identity belongs to the profile keyed by itself.
    let profile = match stitching {
        crate::config::Stitching::Graph => "profile_id".to_string(),
        crate::config::Stitching::None => format!(
            "{}(namespace, value)",
            crate::identity::anchor::name(class, crate::identity::anchor::Mode::IdOf)
        ),
    };
    let sql = format!(
        "SELECT {profile} AS profile_id, namespace, value, first_seen, last_seen, datasets FROM __identity_map WHERE class = '{}'",
        class.as_str()
    );
    Ok(ctx
        .sql(&sql)
        .await
        .map_err(Error::engine("identity"))?
        .into_view())
}

/// What a dry run found: segment sizes and, per destination, the files a run
/// would write with their rows and counts. Nothing is written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRun {
    pub as_of: String,
    pub segments: Vec<SegmentCount>,
    pub exports: Vec<export::PlannedExport>,
    /// Against the last successful run (`--compare-to-last`).
    pub compared: Option<Comparison>,
}

/// What a dry run would change against the last successful run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub run_id: String,
    /// Profiles now that gather identities from more than one of the last run's profiles.
    pub profiles_merged: u64,
    /// Profiles of the last run whose identities now go to more than one profile.
    pub profiles_split: u64,
    pub profiles_before: u64,
    pub profiles_now: u64,
    /// Per segment: members then and now, entries and exits.
    pub segments: Vec<SegmentChange>,
    /// Per destination: rows exported then and now.
    pub exports: Vec<ExportChange>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentChange {
    pub segment: String,
    pub members_before: Option<u64>,
    pub members_now: u64,
    pub entered: u64,
    pub exited: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportChange {
    pub destination: String,
    pub rows_before: Option<u64>,
    pub rows_now: u64,
}

/// Validate, ingest, stitch, merge, evaluate every segment and prepare every
/// export at `as_of`, writing nothing (identity outputs stay in memory; the
/// ledger, locks and destinations are not touched).
///
/// # Errors
/// What a run would report before writing: bad input, SQL errors, limits
/// exceeded with `on_limit = "fail"`, pack checks.
pub async fn dry_run(
    project: &Project,
    as_of: DateTime<Utc>,
    run_id: &str,
    compare: bool,
) -> Result<DryRun> {
    let ev = evaluate(project, as_of).await?;
    export::check_fields(project, &ev.datasets)?;
    let baseline = segment::history::baseline(project, as_of, run_id).await?;
    let (_, statuses) =
        segment::history::statuses(&ev.memberships, baseline.as_ref().map(|(_, m)| m));
    let profiles: ProfilesByPolicy = ev
        .groups
        .iter()
        .map(|(k, g)| (k.clone(), g.profiles.clone()))
        .collect();
    let audiences = export::Audiences {
        memberships: &ev.memberships,
        profiles: &profiles,
        oversized: &ev.oversized,
        baseline: baseline.as_ref().map(|(_, m)| m),
    };
    let never = Interrupt::default();
    let run = export::RunInfo {
        run_id,
        as_of,
        interrupt: &never,
    };
    let exports = export::plan(&ev.ctx, project, &run, &audiences).await?;
    let segments = SegmentCount::all(&ev.memberships, &statuses);
    let compared = if compare {
        compare_to_last(project, &ev, &segments, &exports).await?
    } else {
        None
    };
    Ok(DryRun {
        as_of: as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
        segments,
        exports,
        compared,
    })
}

/// Compare a dry run with the last successful run: identities regrouped,
/// segment entries and exits, export rows.
async fn compare_to_last(
    project: &Project,
    ev: &Evaluated,
    segments: &[SegmentCount],
    exports: &[export::PlannedExport],
) -> Result<Option<Comparison>> {
    let Some(last_id) = identity::store::latest_run(project).await? else {
        return Ok(None);
    };
    let Some(last) = ledger::get(project, &last_id).await? else {
        return Ok(None);
    };
    let map = identity::store::run_dir(project, &last_id).join("identity_map.parquet");
    ev.ctx
        .register_parquet(
            "__last_map",
            map.url().as_str(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .map_err(Error::engine("compare"))?;
    let count = |sql: &'static str| async move {
        let batches = ev
            .ctx
            .sql(sql)
            .await
            .map_err(Error::engine("compare"))?
            .collect()
            .await
            .map_err(Error::engine("compare"))?;
        Ok::<u64, Error>(
            batches
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .map(|a| a.value(0))
                })
                .unwrap_or(0) as u64,
        )
    };
    let merged = count("SELECT count(*) FROM (SELECT n.class, n.profile_id FROM __identity_map n JOIN __last_map o ON n.class = o.class AND n.namespace = o.namespace AND n.value = o.value GROUP BY n.class, n.profile_id HAVING count(DISTINCT o.profile_id) > 1)").await?;
    let split = count("SELECT count(*) FROM (SELECT o.class, o.profile_id FROM __identity_map n JOIN __last_map o ON n.class = o.class AND n.namespace = o.namespace AND n.value = o.value GROUP BY o.class, o.profile_id HAVING count(DISTINCT n.profile_id) > 1)").await?;
    let before = count("SELECT count(DISTINCT class || '/' || profile_id) FROM __last_map").await?;
    let now =
        count("SELECT count(DISTINCT class || '/' || profile_id) FROM __identity_map").await?;
    let _ = ev.ctx.deregister_table("__last_map");
    let seg_changes = segments
        .iter()
        .map(|s| SegmentChange {
            segment: s.segment.clone(),
            members_before: last
                .segments
                .iter()
                .find(|l| l.segment == s.segment)
                .map(|l| l.members),
            members_now: s.members,
            entered: s.realized,
            exited: s.exited,
        })
        .collect();
    let export_changes = exports
        .iter()
        .map(|e| ExportChange {
            destination: e.destination.clone(),
            rows_before: last
                .exports
                .iter()
                .find(|m| m.destination == e.destination)
                .map(ExportManifest::rows),
            rows_now: e.rows(),
        })
        .collect();
    Ok(Some(Comparison {
        run_id: last_id,
        profiles_merged: merged,
        profiles_split: split,
        profiles_before: before,
        profiles_now: now,
        segments: seg_changes,
        exports: export_changes,
    }))
}
