//! Our SQL functions.
//!
//! * `as_of()`: the run's as-of time (TIMESTAMP, UTC). Segments use it for every
//!   relative window, so re-running a past as-of reproduces its audiences.
//! * `now()` / `current_timestamp`, `current_date()`, `today()`: also the as-of, so
//!   no query can read the wall clock by accident.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// A nullary function returning a fixed value.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FixedValue {
    name: String,
    aliases: Vec<String>,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for FixedValue {
    fn name(&self) -> &str {
        &self.name
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn fixed(name: &'static str, aliases: &[&str], value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(FixedValue {
        name: name.to_string(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        value,
        signature: Signature::nullary(Volatility::Immutable),
    })
}

/// What defines one of the fixed-value functions, as shipped to cluster executors.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FixedSpec {
    pub name: String,
    pub aliases: Vec<String>,
    /// Microseconds since the epoch (a UTC timestamp) or days (a date).
    pub value: i64,
    pub date: bool,
}

/// The spec of `f` when it is one of the fixed-value time functions.
pub fn fixed_spec_of(f: &ScalarUDF) -> Option<FixedSpec> {
    let v = f.inner().downcast_ref::<FixedValue>()?;
    let (value, date) = match &v.value {
        ScalarValue::TimestampMicrosecond(Some(t), _) => (*t, false),
        ScalarValue::Date32(Some(d)) => (i64::from(*d), true),
        _ => return None,
    };
    Some(FixedSpec {
        name: v.name.to_string(),
        aliases: v.aliases.clone(),
        value,
        date,
    })
}

/// The function a spec defines.
pub fn from_fixed_spec(spec: &FixedSpec) -> ScalarUDF {
    let value = if spec.date {
        ScalarValue::Date32(Some(spec.value as i32))
    } else {
        ScalarValue::TimestampMicrosecond(Some(spec.value), Some(Arc::from("UTC")))
    };
    ScalarUDF::new_from_impl(FixedValue {
        name: spec.name.clone(),
        aliases: spec.aliases.clone(),
        value,
        signature: Signature::nullary(Volatility::Immutable),
    })
}

/// The as-of as a SQL literal type: `TIMESTAMP(µs, 'UTC')`.
pub fn as_of_scalar(as_of: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(as_of.timestamp_micros()), Some(Arc::from("UTC")))
}

/// The timestamp type every dataset timestamp is cast to.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// `ts <= as_of()`: the row happened by the run's as-of (NULL when `ts` is NULL).
///
/// # Errors
/// When the session has no `as_of` function (it always does after [`crate::engine::session`]).
pub fn by_as_of(
    ctx: &SessionContext,
    ts: datafusion::logical_expr::Expr,
) -> DfResult<datafusion::logical_expr::Expr> {
    use datafusion::execution::FunctionRegistry;
    let as_of = ctx.udf("as_of")?.call(vec![]);
    Ok(datafusion::logical_expr::cast(ts, timestamp_type()).lt_eq(as_of))
}

/// Register `as_of()` and replace the wall-clock functions with the as-of.
pub fn register_time_functions(ctx: &SessionContext, as_of: DateTime<Utc>) {
    let epoch_days = as_of.timestamp().div_euclid(86_400) as i32;
    ctx.register_udf(fixed("as_of", &[], as_of_scalar(as_of)));
    ctx.register_udf(fixed("now", &["current_timestamp"], as_of_scalar(as_of)));
    ctx.register_udf(fixed(
        "current_date",
        &["today"],
        ScalarValue::Date32(Some(epoch_days)),
    ));
}
