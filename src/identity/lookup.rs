//! Identity → profile lookup, shared by the functions that attribute records
//! and events to profiles.

use super::graph::IdentityGraph;
use super::normalise::PhoneCache;
use crate::config::Class;

/// The interned identities of a run with each one's profile and quarantine flag.
#[derive(Debug, Default)]
pub struct IdentityLookup {
    graph: IdentityGraph,
    /// Profile index of every identity.
    profile_of: Vec<u32>,
    quarantined: Vec<bool>,
    /// Profile ids by profile index.
    profile_ids: Vec<String>,
    /// Phone numbers parsed by the identity stage, by namespace index.
    phones: Vec<PhoneCache>,
}

impl IdentityLookup {
    pub(crate) fn new(
        graph: IdentityGraph,
        profile_of: Vec<u32>,
        quarantined: Vec<bool>,
        profile_ids: Vec<String>,
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
        &self.profile_ids[profile as usize]
    }

    /// Bytes of distinct identity values.
    pub fn value_bytes(&self) -> usize {
        self.graph.value_bytes()
    }
}
