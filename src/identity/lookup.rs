//! Identity → profile lookup, shared by the functions that attribute records
//! and events to profiles.

use datafusion::arrow::array::RecordBatch;

use super::graph::IdentityGraph;
use super::ids::ProfileIds;
use super::normalise::PhoneCache;
use crate::config::{Class, Namespace};
use crate::engine::storage::Location;
use crate::error::{Error, Result};

/// The interned identities of a run with each one's profile and quarantine flag.
#[derive(Debug, Default)]
pub struct IdentityLookup {
    graph: IdentityGraph,
    /// Profile index of every identity.
    profile_of: Vec<u32>,
    quarantined: Vec<bool>,
    /// Profile ids by profile index.
    profile_ids: ProfileIds,
    /// Phone numbers parsed by the identity stage, by namespace index.
    phones: Vec<PhoneCache>,
}

impl IdentityLookup {
    pub(crate) fn new(
        graph: IdentityGraph,
        profile_of: Vec<u32>,
        quarantined: Vec<bool>,
        profile_ids: ProfileIds,
        phones: Vec<PhoneCache>,
    ) -> Self {
        IdentityLookup {
            graph,
            profile_of,
            quarantined,
            profile_ids,
            phones,
        }
    }

    /// The phone cache of a namespace (filled by the identity stage).
    pub fn phones(&self, ns: usize) -> Option<&PhoneCache> {
        self.phones.get(ns)
    }

    /// `(quarantined, profile index)` of a normalised identity, if the run saw it.
    pub fn get(&self, class: Class, ns: u16, value: &str) -> Option<(bool, u32)> {
        let id = self.graph.get(class, ns, value)? as usize;
        Some((self.quarantined[id], self.profile_of[id]))
    }

    pub fn profile_id(&self, profile: u32) -> &str {
        self.profile_ids.get(profile)
    }

    /// Bytes of distinct identity values.
    pub fn value_bytes(&self) -> usize {
        self.graph.value_bytes()
    }

    /// Rebuild a run's lookup from its identity outputs (`identity_map.parquet`
    /// and `quarantined.parquet` under `outputs`): what a cluster executor does
    /// instead of receiving the lookup from the process that stitched.
    /// `namespaces` are the project's, in the order the outputs were made with.
    ///
    /// # Errors
    /// When the outputs cannot be read or name an unknown namespace.
    pub async fn load(outputs: &Location, namespaces: &[Namespace]) -> Result<IdentityLookup> {
        let read = async |file: &str| -> Result<Vec<RecordBatch>> {
            let loc = outputs.join(file);
            let bytes = super::store::get(&loc)
                .await?
                .ok_or_else(|| Error::Internal(format!("{} is missing", loc.display())))?;
            super::store::read_parquet(bytes, file)
        };
        let ns_index = |name: &str| {
            namespaces
                .iter()
                .position(|n| n.name == name)
                .map(|i| i as u16)
                .ok_or_else(|| {
                    Error::Internal(format!("identity outputs name unknown namespace {name}"))
                })
        };
        let class_of = |name: &str| match name {
            "prospect" => Class::Prospect,
            _ => Class::Customer,
        };
        let map = read("identity_map.parquet").await?;
        let mut builder = super::graph::GraphBuilder::new(1, 1);
        let mut cols = Vec::with_capacity(map.len());
        for batch in &map {
            let c = [
                str_col(batch, 0)?,
                str_col(batch, 1)?,
                str_col(batch, 2)?,
                str_col(batch, 3)?,
            ];
            for r in 0..batch.num_rows() {
                builder.add_row(
                    class_of(c[0].value(r)),
                    0,
                    0,
                    [(ns_index(c[1].value(r))?, c[2].value(r))],
                )?;
            }
            cols.push(c);
        }
        let graph = builder.finish()?;
        let mut profile_of = vec![0u32; graph.len()];
        let mut profile_ids: Vec<String> = Vec::new();
        let mut numbers: std::collections::HashMap<String, u32> = Default::default();
        for (batch, c) in map.iter().zip(&cols) {
            for r in 0..batch.num_rows() {
                let pid = c[3].value(r);
                let number = *numbers.entry(pid.to_string()).or_insert_with(|| {
                    profile_ids.push(pid.to_string());
                    (profile_ids.len() - 1) as u32
                });
                if let Some(id) = graph.get(
                    class_of(c[0].value(r)),
                    ns_index(c[1].value(r))?,
                    c[2].value(r),
                ) {
                    profile_of[id as usize] = number;
                }
            }
        }
        let mut quarantined = vec![false; graph.len()];
        for batch in read("quarantined.parquet").await? {
            let (class, ns, value) = (
                str_col(&batch, 0)?,
                str_col(&batch, 1)?,
                str_col(&batch, 2)?,
            );
            for r in 0..batch.num_rows() {
                if let Some(id) = graph.get(
                    class_of(class.value(r)),
                    ns_index(ns.value(r))?,
                    value.value(r),
                ) {
                    quarantined[id as usize] = true;
                }
            }
        }
        let phones = namespaces.iter().map(|_| PhoneCache::default()).collect();
        let mut graph = graph;
        graph.shrink();
        Ok(IdentityLookup::new(
            graph,
            profile_of,
            quarantined,
            profile_ids.iter().collect(),
            phones,
        ))
    }
}

fn str_col(batch: &RecordBatch, i: usize) -> Result<super::StrCol> {
    super::StrCol::new(batch.column(i))
}
