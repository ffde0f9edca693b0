//! # audience
//!
//! A batch audience engine for customer data on Apache Arrow and DataFusion.
//!
//! ```text
//!  Parquet datasets (local, s3://, gs://, az://)
//!        │
//!  1 ingest     validate files, columns, types          src/ingest
//!        │
//!  2 identity   normalise, link, connected components   src/identity
//!        │
//!  3 merge      one unified profile per person          src/merge
//!        │
//!  4 segments   SQL audiences at a fixed as-of          src/segment
//!        │
//!  5 exports    full files + manifest + _SUCCESS        src/export
//!        │
//!    run record in the state location                   src/run
//! ```
//!
//! [`run::Pipeline`] is the one entry point shared by the CLI and the tests.

pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod export;
pub mod generate;
pub mod identity;
pub mod ingest;
pub mod merge;
pub mod run;
pub mod segment;

pub use error::{Error, Result};

/// The engine version written into manifests and run records.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
