//! `normaliser = "sql"`: a SQL expression over the raw value, run by the engine.
//!
//! The expression reads the raw value as `value` (as a string) and is applied
//! where the identity column is read: in the identity stage and in the anchor
//! function's arguments. It may not contain subqueries.

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, cast, ident};
use datafusion::prelude::SessionContext;

use crate::config::Namespace;
use crate::error::{Error, Result};

fn parse(expression: &str) -> std::result::Result<Expr, String> {
    let schema = Schema::new(vec![Field::new("value", DataType::Utf8, true)]);
    let df_schema = DFSchema::try_from(schema).map_err(|e| e.to_string())?;
    let expr = SessionContext::new()
        .parse_sql_expr(expression, &df_schema)
        .map_err(|e| format!("not a valid SQL expression: {e}"))?;
    let has_subquery = expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true);
    if has_subquery {
        return Err("a normaliser expression cannot contain a subquery".into());
    }
    let mut reads_value = false;
    expr.apply(|e| {
        if let Expr::Column(c) = e {
            if c.name == "value" {
                reads_value = true;
            } else {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "unknown column `{}`",
                    c.name
                )));
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(|e| format!("the expression may only read `value`: {e}"))?;
    if !reads_value {
        return Err("the expression does not read `value`".into());
    }
    Ok(expr)
}

/// Check an expression at validation; the message says what is wrong.
pub fn check(expression: &str) -> std::result::Result<(), String> {
    parse(expression).map(|_| ())
}

/// The expression that reads a namespace's identity from `column`: the column
/// as a string, through the namespace's SQL expression when it has one.
///
/// # Errors
/// [`Error::Internal`] when an expression that passed validation no longer parses.
pub fn column_expr(ns: &Namespace, column: &str) -> Result<Expr> {
    let raw = cast(ident(column), DataType::Utf8);
    let Some(expression) = &ns.expression else {
        return Ok(ident(column));
    };
    let expr = parse(expression).map_err(Error::Internal)?;
    let replaced = expr
        .transform(|e| match e {
            Expr::Column(Column { name, .. }) if name == "value" => {
                Ok(Transformed::yes(raw.clone()))
            }
            other => Ok(Transformed::no(other)),
        })
        .map_err(Error::engine("identity"))?;
    Ok(cast(replaced.data, DataType::Utf8))
}
