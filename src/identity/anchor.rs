//! `audience_profile_<class>('ns', col, 'ns2', col2, ...)`: the profile id a
//! row belongs to: the profile of its highest-priority valid identity that is
//! not quarantined (ties: namespace name, then value); when all its identities
//! are quarantined, its highest-priority one's; NULL when the row has no valid
//! identity. Records and events get their `profile_id` from it.

use std::sync::{Arc, OnceLock};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    spec: Spec,
    /// The run's lookup: given when made by the stitching process, else loaded
    /// from `spec.outputs` on first use (a cluster executor).
    lookup: OnceLock<Arc<IdentityLookup>>,
    signature: Signature,
}

/// What defines a profile function, as shipped to cluster executors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub class: Class,
    pub mode: Mode,
    /// Sorted by (priority, name): index order is anchor order.
    pub namespaces: Vec<Namespace>,
    /// URL of the run's identity outputs, from which the lookup can be rebuilt.
    pub outputs: String,
}

// One instance per run and class: identity is the spec (its outputs name the run).
impl PartialEq for ProfileUdf {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}
impl Eq for ProfileUdf {}
impl std::hash::Hash for ProfileUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.spec.hash(state);
    }
}

impl ProfileUdf {
    fn lookup(&self) -> DfResult<&IdentityLookup> {
        if let Some(l) = self.lookup.get() {
            return Ok(l);
        }
        let loaded = load_blocking(&self.spec)?;
        Ok(self.lookup.get_or_init(|| loaded))
    }
}

/// Load a lookup from a synchronous function body: on a thread of its own with
/// its own runtime, so it works inside any async runtime.
fn load_blocking(spec: &Spec) -> DfResult<Arc<IdentityLookup>> {
    let spec = spec.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let outputs =
            crate::engine::storage::Location::parse(&spec.outputs, std::path::Path::new("/"))?;
        rt.block_on(IdentityLookup::load(&outputs, &spec.namespaces))
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| DataFusionError::Execution("loading the identity lookup panicked".into()))?
    .map_err(|e| DataFusionError::Execution(format!("cannot load the identity lookup: {e}")))
}

/// The function of a class and mode over a run's identity lookup, whose
/// outputs (identity map, quarantined identities) are under `outputs`.
pub fn udf(
    class: Class,
    mode: Mode,
    namespaces: &[Namespace],
    lookup: Arc<IdentityLookup>,
    outputs: &crate::engine::storage::Location,
) -> ScalarUDF {
    let f = from_spec(Spec {
        class,
        mode,
        namespaces: namespaces.to_vec(),
        outputs: outputs.url().to_string(),
    });
    if let Some(p) = f.inner().downcast_ref::<ProfileUdf>() {
        let _ = p.lookup.set(lookup);
    }
    f
}

/// The function a spec defines (its lookup loaded on first use).
pub fn from_spec(spec: Spec) -> ScalarUDF {
    ScalarUDF::new_from_impl(ProfileUdf {
        name: name(spec.class, spec.mode),
        spec,
        lookup: OnceLock::new(),
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// The spec of `f` when it is one of this module's functions.
pub fn spec_of(f: &ScalarUDF) -> Option<&Spec> {
    f.inner().downcast_ref::<ProfileUdf>().map(|p| &p.spec)
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
        if self.spec.mode == Mode::IdOf {
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
                    out.append_value(unstitched_id(
                        self.spec.class,
                        ns.value(row),
                        value.value(row),
                    ));
                }
            }
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        }
        if !args.args.len().is_multiple_of(2) || args.args.is_empty() {
            return exec_err!("{} takes pairs of (namespace literal, column)", self.name);
        }
        // Only the graph mode needs the lookup; the others use its phone cache when at hand.
        let lookup: Option<&IdentityLookup> = if self.spec.mode == Mode::Graph {
            Some(self.lookup()?)
        } else {
            self.lookup.get().map(|l| &**l)
        };
        let mut cols: Vec<(usize, Normaliser, StrCol)> = Vec::new();
        for pair in args.args.chunks(2) {
            let ns = match &pair[0] {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
                | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => s.clone(),
                _ => {
                    return exec_err!("{}: namespace arguments must be string literals", self.name);
                }
            };
            let Some(idx) = self.spec.namespaces.iter().position(|x| x.name == ns) else {
                return exec_err!("{}: unknown namespace {ns}", self.name);
            };
            let arr = pair[1].clone().into_array(n)?;
            let col = StrCol::new(&arr).map_err(|e| DataFusionError::Execution(e.to_string()))?;
            let mut norm = Normaliser::new(&self.spec.namespaces[idx]);
            if let Some(c) = lookup.and_then(|l| l.phones(idx)) {
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
                let (quarantined, profile) = if self.spec.mode == Mode::Graph {
                    match lookup.and_then(|l| l.get(self.spec.class, *idx as u16, &v)) {
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
            match (best, self.spec.mode) {
                (Some((_, p)), Mode::Graph) => {
                    out.append_value(lookup.map(|l| l.profile_id(p)).unwrap_or_default())
                }
                (Some(((_, idx, v), _)), Mode::Record) => out.append_value(unstitched_id(
                    self.spec.class,
                    &self.spec.namespaces[idx].name,
                    &v,
                )),
                (Some(((_, _, v), _)), _) => out.append_value(v),
                (None, _) => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
