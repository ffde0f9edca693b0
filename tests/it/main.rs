//! Integration tests: one binary, a module per stage plus the CLI.

mod cli;
#[cfg(feature = "distributed")]
mod cluster;
mod config;
mod exports;
mod graph;
mod identity;
mod ingest;
mod merge;
mod pipeline;
mod reference;
mod runs;
mod segments;
mod slt;
mod support;
