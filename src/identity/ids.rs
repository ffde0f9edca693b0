//! Profile ids: deterministic, not personal data, and stable across runs.
//!
//! A fresh id is 32 hex characters of SHA-256 over a fixed prefix, the class and
//! the component's representative identity: its earliest-seen identity (ties:
//! rank, i.e. namespace priority, namespace name, value). With the previous
//! run's identity map ([`Previous`]):
//!
//! * every previous id goes to the component holding most of the identities
//!   that carried it (ties: the component whose best-ranked identity ranks
//!   first), so when a profile splits, the larger part keeps the id;
//! * a component given several previous ids (a merge) keeps the one carried by
//!   most of its identities (ties: the smallest id); the others retire;
//! * a component with no previous id gets a fresh one; a fresh id never reuses
//!   an id of the previous map (on a clash the hash is salted with `#1`, `#2`, ...).
//!
//! So a component that only grows keeps its id, and the same input with the
//! same previous map gives byte-identical ids.

use std::collections::{BTreeMap, HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::graph::IdentityGraph;
use crate::config::Class;

/// The previous run's ids, as 128-bit numbers (ids are 32 hex characters).
#[derive(Debug, Default)]
pub struct Previous {
    /// Index into `ids` of each identity of this run (`u32::MAX`: not in the previous map).
    pub by_identity: Vec<u32>,
    /// Distinct previous ids.
    pub ids: Vec<u128>,
    /// Every previous id, so that a fresh id never reuses one.
    pub all: HashSet<u128>,
}

/// A profile id as a number (`None` if it is not 32 hex characters).
pub fn id_number(id: &str) -> Option<u128> {
    (id.len() == 32)
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
}

/// A number as a profile id.
pub fn id_text(n: u128) -> String {
    format!("{n:032x}")
}

/// A fresh profile id.
pub fn fresh_id(class: Class, namespace: &str, value: &str, salt: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"audience-profile-v1\x1f");
    h.update(class.as_str().as_bytes());
    h.update([0x1f]);
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(value.as_bytes());
    if salt > 0 {
        h.update(format!("#{salt}").as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Assign a profile id to every component.
///
/// `order` lists identities by rank; `roots[i]` is identity `i`'s component.
/// Returns the id of each component root.
pub fn assign(
    graph: &IdentityGraph,
    ns_names: &[&str],
    roots: &[u32],
    order: &[u32],
    previous: Option<&Previous>,
) -> HashMap<u32, String> {
    // Components in order of their best-ranked identity; representative per component.
    let mut comp_order: Vec<u32> = Vec::new();
    let mut position: HashMap<u32, usize> = HashMap::new();
    let mut rep: HashMap<u32, u32> = HashMap::new();
    for &i in order {
        let r = roots[i as usize];
        position.entry(r).or_insert_with(|| {
            comp_order.push(r);
            comp_order.len() - 1
        });
        let better = rep
            .get(&r)
            .is_none_or(|&j| graph.first_seen[i as usize] < graph.first_seen[j as usize]);
        if better {
            rep.insert(r, i);
        }
    }
    let mut out: HashMap<u32, String> = HashMap::with_capacity(comp_order.len());
    let empty = HashSet::new();
    let old_ids: &HashSet<u128> = previous.map(|p| &p.all).unwrap_or(&empty);
    let mut used: HashSet<u128> = HashSet::new();
    if let Some(prev) = previous {
        // (old id, component) → identities carrying it.
        let mut counts: BTreeMap<(u32, usize), u64> = BTreeMap::new();
        for (id, &old) in prev.by_identity.iter().enumerate() {
            if old != u32::MAX {
                *counts.entry((old, position[&roots[id]])).or_default() += 1;
            }
        }
        // Each old id to the component with most of its identities (ties: the earlier component).
        let mut best: BTreeMap<u32, (u64, usize)> = BTreeMap::new();
        for (&(old, comp), &n) in &counts {
            let e = best.entry(old).or_insert((n, comp));
            if n > e.0 || (n == e.0 && comp < e.1) {
                *e = (n, comp);
            }
        }
        // Each component keeps the old id with most identities (ties: the smallest id).
        // Numbers compare like the fixed-width hex ids they stand for.
        let mut survivor: BTreeMap<usize, (u64, u128)> = BTreeMap::new();
        for (&old, &(n, comp)) in &best {
            let id = prev.ids[old as usize];
            let e = survivor.entry(comp).or_insert((n, id));
            if n > e.0 || (n == e.0 && id < e.1) {
                *e = (n, id);
            }
        }
        for (comp, (_, id)) in survivor {
            out.insert(comp_order[comp], id_text(id));
        }
    }
    for &r in &comp_order {
        if out.contains_key(&r) {
            continue;
        }
        let i = rep[&r] as usize;
        let (class, ns, value) = (
            graph.class[i],
            ns_names[graph.ns[i] as usize],
            graph.value(i as u32),
        );
        let mut salt = 0;
        let mut id = fresh_id(class, ns, value, salt);
        while id_number(&id).is_some_and(|n| used.contains(&n) || old_ids.contains(&n)) {
            salt += 1;
            id = fresh_id(class, ns, value, salt);
        }
        used.extend(id_number(&id));
        out.insert(r, id);
    }
    out
}
