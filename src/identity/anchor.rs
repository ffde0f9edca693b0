//! `audience_anchor('ns', col, 'ns2', col2, ...)`: the key (`namespace:value`)
//! of a row's anchor, its highest-priority valid identity (ties: namespace
//! name, then value), or NULL when the row has none. Records and events join on
//! it to the identity map to get their profile id.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::normalise::Normaliser;
use crate::config::Namespace;

/// The UDF's name.
pub const NAME: &str = "audience_anchor";

#[derive(Debug, PartialEq, Eq, Hash)]
struct AnchorUdf {
    /// Sorted by (priority, name): index order is anchor order.
    namespaces: Vec<Namespace>,
    signature: Signature,
}

/// The anchor function for a project's namespaces.
pub fn udf(namespaces: &[Namespace]) -> ScalarUDF {
    ScalarUDF::new_from_impl(AnchorUdf {
        namespaces: namespaces.to_vec(),
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for AnchorUdf {
    fn name(&self) -> &str {
        NAME
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
            return exec_err!("{NAME} takes pairs of (namespace literal, column)");
        }
        let mut cols: Vec<(usize, Normaliser, ArrayRef)> = Vec::new();
        for pair in args.args.chunks(2) {
            let ns = match &pair[0] {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
                | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => s.clone(),
                _ => return exec_err!("{NAME}: namespace arguments must be string literals"),
            };
            let Some(idx) = self.namespaces.iter().position(|x| x.name == ns) else {
                return exec_err!("{NAME}: unknown namespace {ns}");
            };
            let arr = pair[1].clone().into_array(n)?;
            let arr = datafusion::arrow::compute::cast(&arr, &DataType::Utf8)?;
            cols.push((idx, Normaliser::new(&self.namespaces[idx]), arr));
        }
        let strings: Vec<&datafusion::arrow::array::StringArray> = cols
            .iter()
            .map(|(_, _, a)| {
                a.as_any()
                    .downcast_ref()
                    .expect("cast to Utf8 gives a StringArray")
            })
            .collect();
        let mut out = StringBuilder::with_capacity(n, n * 24);
        for row in 0..n {
            let mut best: Option<(usize, String)> = None;
            for ((idx, norm, _), arr) in cols.iter().zip(&strings) {
                if arr.is_null(row) {
                    continue;
                }
                if let Ok(v) = norm.apply(arr.value(row)) {
                    let cand = (*idx, v);
                    if best.as_ref().is_none_or(|b| cand < *b) {
                        best = Some(cand);
                    }
                }
            }
            match best {
                Some((idx, v)) => out.append_value(format!("{}:{}", self.namespaces[idx].name, v)),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
