//! `audience_profile_<class>('ns', col, 'ns2', col2, ...)`: the profile id a
//! row belongs to: the profile of its highest-priority valid identity that is
//! not quarantined (ties: namespace name, then value); when all its identities
//! are quarantined, its highest-priority one's; NULL when the row has no valid
//! identity. Records and events get their `profile_id` from it.

use std::sync::Arc;

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::StrCol;
use super::lookup::IdentityLookup;
use super::normalise::Normaliser;
use crate::config::{Class, Namespace};

/// What a function of this module returns for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The stitched profile of the row's best identity (see the module doc).
    Graph,
    /// Stitching off: the id of the profile keyed by the row's highest-priority
    /// valid identity (ties: the smallest value), see [`unstitched_id`].
    Record,
    /// `(ns, col)`: the normalised value, NULL when it is not a valid identity.
    Normalise,
    /// `(namespace column, value column)` of normalised identities: [`unstitched_id`].
    IdOf,
}

/// The function's name for a class and mode.
pub fn name(class: Class, mode: Mode) -> String {
    let what = match mode {
        Mode::Graph => "profile",
        Mode::Record => "record_profile",
        Mode::Normalise => "identity",
        Mode::IdOf => "unstitched_id",
    };
    format!("audience_{what}_{}", class.as_str())
}

/// The profile id of an identity when stitching is off: a hash of class,
/// namespace and value, in a domain of its own (never equal to a stitched id).
pub fn unstitched_id(class: Class, namespace: &str, value: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"audience-unstitched-v1\x1f");
    h.update(class.as_str().as_bytes());
    h.update([0x1f]);
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(value.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[derive(Debug)]
struct ProfileUdf {
    name: String,
    mode: Mode,
    class: Class,
    /// Sorted by (priority, name): index order is anchor order.
    namespaces: Vec<Namespace>,
    lookup: Arc<IdentityLookup>,
    signature: Signature,
}

// One instance per run and class: identity is the instance.
impl PartialEq for ProfileUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.mode == other.mode
            && Arc::ptr_eq(&self.lookup, &other.lookup)
    }
}
impl Eq for ProfileUdf {}
impl std::hash::Hash for ProfileUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        (Arc::as_ptr(&self.lookup) as usize).hash(state);
    }
}

/// The function of a class and mode over a run's identity lookup.
pub fn udf(
    class: Class,
    mode: Mode,
    namespaces: &[Namespace],
    lookup: Arc<IdentityLookup>,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(ProfileUdf {
        name: name(class, mode),
        mode,
        class,
        namespaces: namespaces.to_vec(),
        lookup,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for ProfileUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        if self.mode == Mode::IdOf {
            let [ns, value] = args.args.as_slice() else {
                return exec_err!("{} takes (namespace, value)", self.name);
            };
            let (ns, value) = (ns.clone().into_array(n)?, value.clone().into_array(n)?);
            let err = |e: crate::error::Error| DataFusionError::Execution(e.to_string());
            let (ns, value) = (
                StrCol::new(&ns).map_err(err)?,
                StrCol::new(&value).map_err(err)?,
            );
            let mut out = StringBuilder::with_capacity(n, n * 32);
            for row in 0..n {
                if ns.is_null(row) || value.is_null(row) {
                    out.append_null();
                } else {
                    out.append_value(unstitched_id(self.class, ns.value(row), value.value(row)));
                }
            }
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        }
        if !args.args.len().is_multiple_of(2) || args.args.is_empty() {
            return exec_err!("{} takes pairs of (namespace literal, column)", self.name);
        }
        let mut cols: Vec<(usize, Normaliser, StrCol)> = Vec::new();
        for pair in args.args.chunks(2) {
            let ns = match &pair[0] {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
                | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => s.clone(),
                _ => {
                    return exec_err!("{}: namespace arguments must be string literals", self.name);
                }
            };
            let Some(idx) = self.namespaces.iter().position(|x| x.name == ns) else {
                return exec_err!("{}: unknown namespace {ns}", self.name);
            };
            let arr = pair[1].clone().into_array(n)?;
            let col = StrCol::new(&arr).map_err(|e| DataFusionError::Execution(e.to_string()))?;
            let mut norm = Normaliser::new(&self.namespaces[idx]);
            if let Some(c) = self.lookup.phones(idx) {
                norm = norm.with_cache(c);
            }
            cols.push((idx, norm, col));
        }
        let mut out = StringBuilder::with_capacity(n, n * 32);
        for row in 0..n {
            // (quarantined, namespace index, value) → profile: the smallest key wins.
            let mut best: Option<((bool, usize, String), u32)> = None;
            for (idx, norm, arr) in &cols {
                if arr.is_null(row) {
                    continue;
                }
                let Ok(v) = norm.apply(arr.value(row)) else {
                    continue;
                };
                let (quarantined, profile) = if self.mode == Mode::Graph {
                    match self.lookup.get(self.class, *idx as u16, &v) {
                        Some(found) => found,
                        None => continue,
                    }
                } else {
                    (false, *idx as u32)
                };
                let key = (quarantined, *idx, v.into_owned());
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, profile));
                }
            }
            match (best, self.mode) {
                (Some((_, p)), Mode::Graph) => out.append_value(self.lookup.profile_id(p)),
                (Some(((_, idx, v), _)), Mode::Record) => {
                    out.append_value(unstitched_id(self.class, &self.namespaces[idx].name, &v))
                }
                (Some(((_, _, v), _)), _) => out.append_value(v),
                (None, _) => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
