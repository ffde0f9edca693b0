//! `audience destinations`: the destination catalog (kinds and packs with
//! their options) and the configured destinations with their segments,
//! schedule and last export (in the latest run).

use crate::config::DestinationKind;
use crate::error::Result;
use crate::export::ExportManifest;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One kind of destination in the catalog.
#[derive(Debug, serde::Serialize)]
struct Kind {
    kind: &'static str,
    description: &'static str,
    formats: &'static str,
    cap: Option<u64>,
    options: &'static str,
}

const COMMON: &str = "url, segments, fields (name or {target, source|value, transforms: trim/lower/upper/e164/sha256}), mandatory, dedup_key, max_profiles, on_limit (fail|truncate), purpose (consent), marketing_actions, file_name (tokens {destination} {segment} {segment_name} {run_id} {date} {time} {as_of} {text} {part} {ext}), file_text, rows_per_file";

fn catalog() -> Vec<Kind> {
    vec![
        Kind {
            kind: DestinationKind::CloudStorage.as_str(),
            description: "Files in a folder or bucket (local, s3://, gs://, az://), one full file per segment; the only kind a prospect audience may use",
            formats: "csv (delimiter, quote, escape, header, null; gzip), parquet (zstd, snappy, gzip, lz4, none), json lines (gzip)",
            cap: None,
            options: COMMON,
        },
        Kind {
            kind: DestinationKind::MicrosoftAdvertising.as_str(),
            description: "Microsoft Advertising Customer Match bulk file: one customer list per segment, action Replace, SHA-256 hex of trimmed lower-cased e-mails; e-mail mandatory",
            formats: "csv (bulk format 6.0)",
            cap: DestinationKind::MicrosoftAdvertising.cap(),
            options: "customer_list_ids = { <segment> = <list id> }, fields = [{ target = \"Email\", source = <e-mail column> }], plus the common activation options",
        },
        Kind {
            kind: DestinationKind::Dotdigital.as_str(),
            description: "DotDigital address-book contact import: Email, EmailType (Html), then upper-case data fields (FIRSTNAME, LASTNAME, FULLNAME, GENDER, POSTCODE); e-mail mandatory",
            formats: "csv",
            cap: DestinationKind::Dotdigital.cap(),
            options: "fields = [{ target = \"Email\", source = ... }, { target = \"FIRSTNAME\", source = ... }, ...], plus the common activation options",
        },
        Kind {
            kind: DestinationKind::ProfileSnapshot.as_str(),
            description: "The unified profile table itself (all profiles of a class, or of chosen segments) for BI, archiving and analysis",
            formats: "parquet, json lines, csv (no identity lists)",
            cap: None,
            options: "class, segments (optional filter), fields incl. { target, source = \"identities.<namespace>\" } lists, plus the common options",
        },
    ]
}

#[derive(Debug, serde::Serialize)]
struct Configured {
    name: String,
    kind: &'static str,
    url: String,
    format: &'static str,
    compression: &'static str,
    class: &'static str,
    segments: Vec<String>,
    fields: Vec<String>,
    schedule: String,
    last_export: Option<LastExport>,
}

#[derive(Debug, serde::Serialize)]
struct LastExport {
    run_id: String,
    as_of: String,
    files: usize,
    rows: u64,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let latest: Option<Vec<ExportManifest>> =
        match crate::identity::store::latest_run(&project).await? {
            Some(id) => crate::identity::store::get(
                &crate::identity::store::run_dir(&project, &id).join("run.json"),
            )
            .await?
            .and_then(|b| serde_json::from_slice::<crate::run::RunRecord>(&b).ok())
            .map(|r| r.exports),
            None => None,
        };
    let configured: Vec<Configured> = project
        .destinations
        .iter()
        .map(|d| Configured {
            name: d.name.clone(),
            kind: d.kind.as_str(),
            url: d.location.display(),
            format: d.format_name(),
            compression: d.compression.as_str(),
            class: d.class.as_str(),
            segments: d.segments.clone(),
            fields: d.fields.iter().map(|f| f.target.clone()).collect(),
            schedule: d.schedule.clone().unwrap_or_else(|| "manual".into()),
            last_export: latest.as_ref().and_then(|ms| {
                ms.iter()
                    .find(|m| m.destination == d.name)
                    .map(|m| LastExport {
                        run_id: m.run_id.clone(),
                        as_of: m.as_of.clone(),
                        files: m.files.len(),
                        rows: m.rows(),
                    })
            }),
        })
        .collect();
    if args.json {
        let doc = serde_json::json!({ "kinds": catalog(), "destinations": configured });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc)
                .map_err(|e| crate::error::Error::Internal(e.to_string()))?
        );
        return Ok(0);
    }
    println!("Destination kinds:");
    for k in catalog() {
        println!("  {}", k.kind);
        println!("      {}", k.description);
        println!("      formats: {}", k.formats);
        if let Some(c) = k.cap {
            println!("      at most {c} profiles per export");
        }
        println!("      options: {}", k.options);
    }
    println!();
    if configured.is_empty() {
        println!(
            "No destinations configured in {}.",
            crate::config::CONFIG_FILE
        );
        return Ok(0);
    }
    println!("Configured destinations:");
    for c in &configured {
        println!(
            "  {} ({}, {} {}) → {}",
            c.name, c.kind, c.format, c.compression, c.url
        );
        let segs = if c.segments.is_empty() {
            format!("all {} profiles", c.class)
        } else {
            c.segments.join(", ")
        };
        println!("      segments: {segs}");
        println!("      fields:   {}", c.fields.join(", "));
        println!("      schedule: {}", c.schedule);
        match &c.last_export {
            Some(l) => println!(
                "      last export: run {} (as-of {}), {} rows in {} files",
                l.run_id, l.as_of, l.rows, l.files
            ),
            None => println!("      last export: none in the latest run"),
        }
    }
    Ok(0)
}
