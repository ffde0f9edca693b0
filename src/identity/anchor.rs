//! `audience_anchor_<class>('ns', col, 'ns2', col2, ...)`: the key
//! (`namespace:value`) of the identity whose profile a row belongs to: its
//! highest-priority valid identity that is not quarantined (ties: namespace name,
//! then value); when all its identities are quarantined, the highest-priority
//! one; NULL when the row has no valid identity. Records and events join on it
//! to the identity map to get their profile id.

use std::sync::Arc;

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use std::collections::BTreeSet;

use super::StrCol;
use super::normalise::Normaliser;
use crate::config::{Class, Namespace};

/// The UDF's name for a class.
pub fn name(class: Class) -> String {
    format!("audience_anchor_{}", class.as_str())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AnchorUdf {
    name: String,
    /// Sorted by (priority, name): index order is anchor order.
    namespaces: Vec<Namespace>,
    /// Keys of quarantined identities of the class.
    quarantined: BTreeSet<String>,
    signature: Signature,
}

/// The anchor function of a class.
pub fn udf(class: Class, namespaces: &[Namespace], quarantined: BTreeSet<String>) -> ScalarUDF {
    ScalarUDF::new_from_impl(AnchorUdf {
        name: name(class),
        namespaces: namespaces.to_vec(),
        quarantined,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for AnchorUdf {
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
            cols.push((idx, Normaliser::new(&self.namespaces[idx]), col));
        }
        let mut out = StringBuilder::with_capacity(n, n * 24);
        let mut key = String::new();
        for row in 0..n {
            // (quarantined, namespace index, value): the smallest wins.
            let mut best: Option<(bool, usize, String)> = None;
            for (idx, norm, arr) in &cols {
                if arr.is_null(row) {
                    continue;
                }
                if let Ok(v) = norm.apply(arr.value(row)) {
                    key.clear();
                    key.push_str(&self.namespaces[*idx].name);
                    key.push(':');
                    key.push_str(&v);
                    let quarantined =
                        !self.quarantined.is_empty() && self.quarantined.contains(&key);
                    let cand = (quarantined, *idx, v.into_owned());
                    if best.as_ref().is_none_or(|b| cand < *b) {
                        best = Some(cand);
                    }
                }
            }
            match best {
                Some((_, idx, v)) => {
                    out.append_value(format!("{}:{}", self.namespaces[idx].name, v))
                }
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
