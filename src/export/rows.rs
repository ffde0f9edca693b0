//! The rows of one export: members joined to their profiles, then consent,
//! field mapping and transforms, mandatory fields, dedup key and the profile
//! limit, in that order.
//!
//! Rows stay in `profile_id` order throughout; `on_limit = "truncate"` keeps
//! the first `max_profiles` rows in that order.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use sha2::{Digest, Sha256};

use crate::config::{ConsentRule, Destination, FieldMap, Namespace, Source, Transform};
use crate::error::{Error, Result};
use crate::identity::normalise::Normaliser;

/// Why a member was left out of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Members of the segment.
    pub members: u64,
    /// Oversized profiles (`identity.max_identities`), never exported.
    pub excluded_oversized: u64,
    /// No consent for the destination's purpose (reasons in the suppression file).
    pub suppressed_consent: u64,
    /// Missing a mandatory field, per field.
    pub skipped_mandatory: BTreeMap<String, u64>,
    /// A second row with the same dedup key.
    pub deduplicated: u64,
    /// Cut by `max_profiles` with `on_limit = "truncate"`.
    pub truncated: u64,
    /// Rows exported.
    pub rows: u64,
}

/// A full file, or a delta file beside it (`deltas = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    /// Every current member.
    #[default]
    Full,
    /// Members now that were not members in the baseline run.
    Entered,
    /// Members of the baseline run that are not members now (rows from their
    /// current profiles; profiles that no longer exist are left out).
    Exited,
}

impl Delta {
    pub fn as_str(self) -> &'static str {
        match self {
            Delta::Full => "full",
            Delta::Entered => "entered",
            Delta::Exited => "exited",
        }
    }
}

/// One suppressed profile.
#[derive(Debug, Clone)]
pub struct Suppression {
    pub profile_id: String,
    pub reason: String,
}

/// The rows of one segment for one destination, ready to encode.
pub struct Prepared {
    pub segment: String,
    /// Which file: the full membership, or a delta beside it.
    pub delta: Delta,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub counts: Counts,
    pub suppressions: Vec<Suppression>,
}

/// Shape the joined member rows (sorted by `profile_id`, holding every source
/// column) into the destination's output rows.
///
/// # Errors
/// [`Error::Export`] when a limit is exceeded with `on_limit = "fail"`;
/// [`Error::Internal`] on Arrow failures.
pub fn prepare(
    d: &Destination,
    segment: &str,
    phone: Option<&Namespace>,
    joined: &[RecordBatch],
    mut counts: Counts,
) -> Result<Prepared> {
    let internal =
        |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("export rows: {e}"));
    let phone = phone.map(Normaliser::new);
    let mut out_schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    let mut suppressions = Vec::new();
    let mut seen_keys: HashSet<Box<[u8]>> = HashSet::new();
    let mut converter: Option<RowConverter> = None;
    for b in joined.iter().filter(|b| b.num_rows() > 0) {
        let ids = string_column(b, "profile_id")?;
        let mut keep = vec![true; b.num_rows()];
        if let Some(c) = &d.consent {
            consent(c, b, &ids, &mut keep, &mut suppressions)?;
        }
        let cols: Vec<ArrayRef> = d
            .fields
            .iter()
            .map(|f| output_column(f, b, phone.as_ref()))
            .collect::<Result<_>>()?;
        let schema = out_schema
            .get_or_insert_with(|| {
                Arc::new(Schema::new(
                    d.fields
                        .iter()
                        .zip(&cols)
                        .map(|(f, c)| Field::new(&f.target, c.data_type().clone(), true))
                        .collect::<Vec<_>>(),
                ))
            })
            .clone();
        let index = |t: &str| d.fields.iter().position(|f| f.target == t);
        for m in &d.mandatory {
            let Some(i) = index(m) else { continue };
            let col = &cols[i];
            let strings = col.as_any().downcast_ref::<StringArray>();
            for (r, k) in keep.iter_mut().enumerate() {
                let missing =
                    col.is_null(r) || strings.is_some_and(|s| s.value(r).trim().is_empty());
                if *k && missing {
                    *k = false;
                    *counts.skipped_mandatory.entry(m.clone()).or_default() += 1;
                }
            }
        }
        if !d.dedup_key.is_empty() {
            let key_cols: Vec<ArrayRef> = d
                .dedup_key
                .iter()
                .filter_map(|k| index(k))
                .map(|i| cols[i].clone())
                .collect();
            let conv = match &mut converter {
                Some(c) => c,
                None => converter.insert(
                    RowConverter::new(
                        key_cols
                            .iter()
                            .map(|c| SortField::new(c.data_type().clone()))
                            .collect(),
                    )
                    .map_err(internal)?,
                ),
            };
            let rows = conv.convert_columns(&key_cols).map_err(internal)?;
            for (r, k) in keep.iter_mut().enumerate() {
                if *k && !seen_keys.insert(rows.row(r).as_ref().into()) {
                    *k = false;
                    counts.deduplicated += 1;
                }
            }
        }
        let out = RecordBatch::try_new(schema, cols).map_err(internal)?;
        let mask = BooleanArray::from(keep);
        let kept = filter_record_batch(&out, &mask).map_err(internal)?;
        counts.rows += kept.num_rows() as u64;
        batches.push(kept);
    }
    counts.suppressed_consent = suppressions.len() as u64;
    let schema = match out_schema {
        Some(s) => s,
        None => empty_schema(d, joined)?,
    };
    if let Some(max) = d.max_profiles
        && counts.rows > max
    {
        match d.on_limit {
            crate::config::OnLimit::Fail => {
                return Err(Error::Export {
                    destination: d.name.clone(),
                    message: format!(
                        "segment `{segment}` has {} profiles to export, above max_profiles = {max}; nothing was written. Raise `max_profiles`, narrow the segment, or set `on_limit = \"truncate\"` to keep the first {max} by profile_id",
                        counts.rows
                    ),
                });
            }
            crate::config::OnLimit::Truncate => {
                counts.truncated = counts.rows - max;
                counts.rows = max;
                batches = truncate(batches, max as usize);
            }
        }
    }
    Ok(Prepared {
        segment: segment.to_string(),
        delta: Delta::Full,
        schema,
        batches,
        counts,
        suppressions,
    })
}

fn truncate(batches: Vec<RecordBatch>, mut left: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        left -= n;
        out.push(b.slice(0, n));
    }
    out
}

/// The output schema when no member is left: string columns, or the source types.
fn empty_schema(d: &Destination, joined: &[RecordBatch]) -> Result<SchemaRef> {
    let src = joined.first().map(RecordBatch::schema);
    let fields: Vec<Field> = d
        .fields
        .iter()
        .map(|f| {
            let t = match (&f.source, &src) {
                (Source::Column(c), Some(s)) if f.transforms.is_empty() => s
                    .field_with_name(c)
                    .map(|x| x.data_type().clone())
                    .unwrap_or(DataType::Utf8),
                _ => DataType::Utf8,
            };
            Field::new(&f.target, t, true)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn string_column(b: &RecordBatch, name: &str) -> Result<Arc<StringArray>> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("export rows lack column `{name}`")))?;
    let s =
        cast(col, &DataType::Utf8).map_err(|e| Error::Internal(format!("cast `{name}`: {e}")))?;
    Ok(Arc::new(
        s.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| Error::Internal(format!("`{name}` is not text")))?,
    ))
}

fn consent(
    rule: &ConsentRule,
    b: &RecordBatch,
    ids: &StringArray,
    keep: &mut [bool],
    out: &mut Vec<Suppression>,
) -> Result<()> {
    let values = string_column(b, &rule.attribute)?;
    for (r, k) in keep.iter_mut().enumerate() {
        let reason = if values.is_null(r) || values.value(r).trim().is_empty() {
            format!(
                "no consent recorded for purpose `{}` (`{}` is empty)",
                rule.purpose, rule.attribute
            )
        } else {
            let v = values.value(r).trim().to_lowercase();
            if rule.granted.contains(&v) {
                continue;
            }
            format!(
                "consent for purpose `{}` not granted (`{}` = `{}`)",
                rule.purpose,
                rule.attribute,
                values.value(r)
            )
        };
        *k = false;
        out.push(Suppression {
            profile_id: ids.value(r).to_string(),
            reason,
        });
    }
    Ok(())
}

/// One output column: the source column as is (no transforms), or as text
/// with the transforms applied in order; constants repeat.
fn output_column(
    f: &FieldMap,
    b: &RecordBatch,
    phone: Option<&Normaliser<'_>>,
) -> Result<ArrayRef> {
    match &f.source {
        Source::Constant(v) => Ok(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(v.as_str(), b.num_rows()),
        ))),
        Source::IdentityList(ns) => b
            .column_by_name(&format!("identities.{ns}"))
            .cloned()
            .ok_or_else(|| Error::Internal(format!("export rows lack identities.{ns}"))),
        Source::Column(c) => {
            let col = b
                .column_by_name(c)
                .ok_or_else(|| Error::Internal(format!("export rows lack column `{c}`")))?;
            if f.transforms.is_empty() {
                return Ok(col.clone());
            }
            let s = string_column(b, c)?;
            let mut out =
                StringBuilder::with_capacity(s.len(), s.value_data().len() + 64 * s.len());
            let mut buf = String::new();
            for v in s.iter() {
                match v.and_then(|v| apply(&f.transforms, v, phone, &mut buf)) {
                    Some(()) => out.append_value(&buf),
                    None => out.append_null(),
                }
            }
            Ok(Arc::new(out.finish()))
        }
    }
}

/// Apply `transforms` to `v` into `buf`; `None` when a transform has no result
/// (`e164` of something that is not a phone number).
pub fn apply(
    transforms: &[Transform],
    v: &str,
    phone: Option<&Normaliser<'_>>,
    buf: &mut String,
) -> Option<()> {
    buf.clear();
    buf.push_str(v);
    for t in transforms {
        match t {
            Transform::Trim => {
                let s = buf.trim();
                if s.len() != buf.len() {
                    *buf = s.to_string();
                }
            }
            Transform::Lower => *buf = buf.to_lowercase(),
            Transform::Upper => *buf = buf.to_uppercase(),
            Transform::E164 => {
                let n = phone?.apply(buf).ok()?.into_owned();
                *buf = n;
            }
            Transform::Sha256 => *buf = hex::encode(Sha256::digest(buf.as_bytes())),
        }
    }
    Some(())
}

/// Whether a column only holds 64 lower-case hex characters (or nulls).
pub fn all_sha256_hex(col: &dyn Array) -> bool {
    col.as_any().downcast_ref::<StringArray>().is_some_and(|s| {
        s.iter().flatten().all(|v| {
            v.len() == 64
                && v.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        })
    })
}
